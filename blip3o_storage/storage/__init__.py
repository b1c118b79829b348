"""Storage core: URIs, configs, the backend contract, the local and S3 backends, the signed-HTTP
transport, retries and deadline, the Storage facade, per-process state and counters."""
