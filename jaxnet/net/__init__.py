"""The network of processes over object storage: peers and validators as separate processes
that meet only through an S3-compatible store (`jaxnet.net.s3`), timed by its clock."""
