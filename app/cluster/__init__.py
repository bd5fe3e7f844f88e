"""The same API on a Ray cluster: replicas of the whole app behind a gateway that routes each request
to the replica holding the longest prefix of its prompt (`hychat serve --ray ADDRESS`)."""
