"""What messages are, per family: pure vocabularies that every other part imports."""
