"""Generated stubs of the pdserve.v1 API (regenerate with `python -m pdserve.protogen`)."""
