"""The shared core of the operator, the reporter, the launcher and the client: the env and
exit-code contract, the checkpoint layout, the progress schema, the source grammar and the wire
helpers. It imports nothing else of ours and needs only pydantic."""
