"""Messages on disk, packed: zstd frames, a request's messages in one (a block), compressed
with a dictionary trained on the store's own recent messages.

A queued message is small JSON whose keys and most values (`messageId`, `context.library`,
the names of events and properties) repeat from one message to the next; compressed alone it
hardly shrinks, but with a dictionary of what messages look like it takes a sixth of its size
(scripts/bench_memory.py measures the disk a backlog takes).

- A store starts with no dictionary and stores messages as they are. Once it has seen
  `SAMPLES` messages, a dictionary is trained on them (in a thread: a tenth of a second),
  recorded in the `dictionaries` table, and used from then on. After `RETRAIN_AFTER`
  messages packed with one dictionary, another is trained on the messages of the moment,
  so that the dictionary follows what is sent.
- A packed message is a zstd frame that names its dictionary by id; anything else is a
  message as it came (JSON starts with `{`, never with zstd's magic number). So rows written
  before packing, or whose message did not shrink, read back as they are, and each row reads
  back with the dictionary it was written with.
- A request's messages are packed together, as a block (`pack_block`): one zstd frame for
  its deliveries (up to rows.BLOCK_DELIVERIES), each message in it once however many of them
  share it. Packed alone, a track of 460 bytes (ids of its own) took 1.1–1.3 µs and 37–38
  bytes, most of the time zstd's set-up for each call; in a block of 100, 0.29 µs and 12
  bytes. A block starts with `BLOCK` (a zero byte), never the start of a message or frame.
- A dictionary records the first delivery id packed with it. Once no queued delivery is
  older than the next dictionary's first id, no row can name it, and it is deleted (see
  `unused`): a long-running store keeps a few dictionaries, not one per million messages.
"""

from __future__ import annotations

import array
import itertools
import struct
import sys
from collections.abc import Iterable, Sequence
from typing import Any, Final

import zstandard

ZSTD_MAGIC: Final = b"\x28\xb5\x2f\xfd"

# The first byte of a block (Packer.pack_block). After it, packed as a message is: how many
# entries it has and how many messages (4 bytes each, little-endian); each message's length
# (4 bytes); when there are fewer messages than entries, each entry's message by its number
# (4 bytes); then the messages, end to end.
BLOCK: Final = b"\x00"
_COUNTS = struct.Struct("<II")
assert array.array("I").itemsize == 4


def _words(numbers: Iterable[int]) -> bytes:
    """`numbers` as 4-byte little-endian words (array builds them in a third of the time
    struct.pack takes with an argument each)."""
    words = array.array("I", numbers)
    if sys.byteorder == "big":
        words.byteswap()
    return words.tobytes()


# Messages a dictionary is trained on, and the dictionary's size: 5,000 and 16 KB already
# packed the messages of scripts/bench_memory.py from 350 bytes to 57; twice that size
# leaves room for traffic more varied than the benchmark's.
SAMPLES: Final = 5_000
DICTIONARY_BYTES: Final = 32 * 1024

# Messages packed with one dictionary before the next is trained.
RETRAIN_AFTER: Final = 1_000_000

# zstd's fastest level: level 3 made messages 2 % smaller for a third more time.
LEVEL: Final = 1


def train(samples: list[bytes]) -> bytes | None:
    """A dictionary for messages like `samples`, or None when they are too few or too alike
    for zstd to make one of."""
    # A list of any bytes-like type: how zstandard's stubs name it differs between versions.
    chosen: list[Any] = list(samples)
    try:
        made = zstandard.train_dictionary(DICTIONARY_BYTES, chosen, level=LEVEL)
    except zstandard.ZstdError:
        return None
    return made.as_bytes()


def dictionary_id(data: bytes) -> int:
    return zstandard.ZstdCompressionDict(data).dict_id()


def unused(dictionaries: Sequence[tuple[int, int | None]], oldest_queued: int | None) -> list[int]:
    """The dictionaries no queued delivery can be packed with, from (dictionary id, first
    delivery id packed with it) oldest first, and the id of the oldest delivery queued (None:
    none is). Every one but the last, whose successor's first id is at most that id."""
    gone = []
    for (dict_id, _), (_, successor_first) in zip(dictionaries, dictionaries[1:], strict=False):
        if successor_first is None:
            break  # not known when the next one took over: keep this one and those before
        if oldest_queued is not None and oldest_queued < successor_first:
            break
        gone.append(dict_id)
    return gone


class Packer:
    """Packs and unpacks messages with the store's dictionaries (in the store's writer
    thread)."""

    def __init__(self, dictionaries: Sequence[bytes] = ()) -> None:
        self._dictionaries: dict[int, bytes] = {}
        # Made when first needed: a store that reads only new rows loads one.
        self._decompressors: dict[int, zstandard.ZstdDecompressor] = {}
        self._compressor: zstandard.ZstdCompressor | None = None
        self._samples: list[bytes] = []
        self.packed = 0  # messages packed with the current dictionary
        for data in dictionaries[:-1]:  # oldest first: the last one is the current one
            self._dictionaries[dictionary_id(data)] = data
        if dictionaries:
            self.adopt(dictionaries[-1])

    @property
    def wants_training(self) -> bool:
        return len(self._samples) >= SAMPLES

    def take_samples(self) -> list[bytes]:
        taken, self._samples = self._samples, []
        return taken

    def adopt(self, data: bytes) -> None:
        """Pack with this dictionary from now on (it is in the `dictionaries` table)."""
        made = zstandard.ZstdCompressionDict(data)
        self._dictionaries[made.dict_id()] = data
        self._compressor = zstandard.ZstdCompressor(
            level=LEVEL, dict_data=made, write_checksum=False, write_dict_id=True
        )
        self.packed = 0
        self._samples = []

    def forget(self, dict_id: int) -> None:
        """No stored message names this dictionary any more (it is deleted)."""
        self._dictionaries.pop(dict_id, None)
        self._decompressors.pop(dict_id, None)

    def pack(self, message: bytes) -> bytes:
        return self._packed(message, (message,))

    def _packed(self, data: bytes, messages: Sequence[bytes]) -> bytes:
        """`data`, which holds `messages`, compressed with the current dictionary (as it is,
        without one, or where it would not shrink); `messages` are sampled for the next
        dictionary while one is wanted, and counted as packed with the current one."""
        compressor = self._compressor
        if compressor is None or self.packed >= RETRAIN_AFTER:
            room = SAMPLES - len(self._samples)
            if room > 0:
                self._samples += messages[:room]
            if compressor is None:
                return data
        self.packed += len(messages)
        packed = compressor.compress(data)
        return packed if len(packed) < len(data) else data

    def pack_block(self, entries: Sequence[bytes], repeats: bool = True) -> bytes:
        """`entries`, one message each, packed as one block; `unpack_shared` gives them
        back in order. A message object that is several entries (an event routed as it came
        to several destinations) is in the block once; `repeats` False says none is, which
        spares looking."""
        count = len(entries)
        unique: Sequence[bytes] = entries
        picks = b""
        if repeats and len(set(map(id, entries))) < count:
            numbers: dict[int, int] = {}  # by id(): the object, not its bytes
            picks = _words([numbers.setdefault(id(message), len(numbers)) for message in entries])
            unique = list({id(message): message for message in entries}.values())
        head = _COUNTS.pack(count, len(unique)) + _words(map(len, unique)) + picks
        return BLOCK + self._packed(head + b"".join(unique), unique)

    def unpack_shared(self, stored: bytes, deliveries: int) -> list[bytes]:
        """The message of each of the `deliveries` that a row of `shared` serves: a block's
        entries, or (as stores wrote before blocks) one message for all of them."""
        if stored[:1] != BLOCK:
            return [self.unpack(stored)] * deliveries
        plain = self.unpack(stored[1:])
        count, different = _COUNTS.unpack_from(plain)
        lengths = struct.unpack_from(f"<{different}I", plain, _COUNTS.size)
        start = _COUNTS.size + 4 * different
        picks: tuple[int, ...] = ()
        if different < count:
            picks = struct.unpack_from(f"<{count}I", plain, start)
            start += 4 * count
        ends = list(itertools.accumulate(lengths, initial=start))
        messages = [plain[ends[i] : ends[i + 1]] for i in range(different)]
        return messages if different == count else [messages[i] for i in picks]

    def unpack(self, stored: bytes) -> bytes:
        if stored[:4] != ZSTD_MAGIC:
            return stored
        dict_id = zstandard.get_frame_parameters(stored).dict_id
        decompressor = self._decompressors.get(dict_id)
        if decompressor is None:
            data = self._dictionaries.get(dict_id)
            if data is None:
                raise ValueError(
                    f"a stored message names dictionary {dict_id}, which is not stored"
                )
            decompressor = self._decompressors[dict_id] = zstandard.ZstdDecompressor(
                dict_data=zstandard.ZstdCompressionDict(data)
            )
        return decompressor.decompress(stored)
