"""batchlab: the command-line edge that ties scheduler/, traces/, sim/, engine/ and reports/ together."""
__version__ = "0.1.0"
