"""Code that runs inside containers, copied in as files: the channel's supervisor and the notebook kernels.

Nothing here imports the rest of the package: it runs on the container's own Python (3.8+) or Node.js."""
