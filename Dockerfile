# relay: docker build -t relay . && docker run -p 8080:8080 --env-file relay.env -v relay-data:/var/lib/relay relay
# (README, "Deploying").

# The wheel is built apart, so that neither the source tree nor the build tools end up
# in the image.
FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY relay ./relay
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.12-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# relay and its dependencies, with the Redis client (storage.redis) so that one image serves
# both storages; no test extras.
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir "$(ls /wheels/relay-*.whl)[redis]" \
    && rm -rf /wheels \
    && useradd --system --user-group --uid 10001 --home-dir /var/lib/relay \
        --shell /usr/sbin/nologin relay \
    && mkdir -p /var/lib/relay /etc/relay \
    && chown relay:relay /var/lib/relay
COPY config/examples/docker.yaml /etc/relay/relay.yaml

USER relay
WORKDIR /var/lib/relay
# The event store (storage.sqlite.path in docker.yaml): one container per volume.
VOLUME /var/lib/relay
EXPOSE 8080
# relay drains on SIGTERM; give it the time it may take: docker stop --time 120
# (compose: stop_grace_period; deploy/relay.service explains the figure).
STOPSIGNAL SIGTERM
# Needs no curl: Python's own urllib, with a timeout below the check's own.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('RELAY_PORT', '8080') + '/healthz', timeout=4)"]
CMD ["relay", "serve", "--config", "/etc/relay/relay.yaml"]
