"""Weight artifacts: manifest, hashing, fetch, push, verify, listing, and the stores behind them.

Import from the submodules; nothing is re-exported here, so `import qinfra.artifacts` stays cheap
(the S3 store loads boto3 only when it first talks to S3)."""
