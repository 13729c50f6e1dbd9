"""memlora.runtime: one backend per runtime behind the `memlora.backend.Backend` interface."""
