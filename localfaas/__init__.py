"""localfaas: runs a SAM template's Python functions locally, as AWS Lambda would, without Docker."""

__version__ = "0.1.0"
