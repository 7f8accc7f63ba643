"""Images: runtime images built from a RuntimeConfig, air-gapped bases, the builder, extra CA
certificates, and the prepared layer every sandbox starts from."""
