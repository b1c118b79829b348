"""Storage core: URIs, configs, the backend contract, the local and S3 backends, signing transport, retries, the Storage facade."""
