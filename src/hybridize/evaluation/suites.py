"""The suites `hybridize eval` runs, apart from the code that runs them: the command line reads them without importing
torch."""

SUITES = ("perplexity", "niah", "passkey", "mqar")
