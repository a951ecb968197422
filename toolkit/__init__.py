"""The workstation pipeline and the click CLI: ingest, train, evaluate, export, quantize, bundle, bench."""
