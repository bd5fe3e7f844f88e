"""Ray Serve's request router for the replicas: prefix affinity (affinity.py) over the queue lengths
Ray keeps for each replica. Ray builds one in every process that holds a handle to the replicas (the
gateway's), and calls `choose_replicas` for each request; within a rank it sends the request to the
replica with the shortest queue that has room."""

from __future__ import annotations

from ray.serve.request_router import FIFOMixin, PendingRequest, ReplicaID, RequestRouter, RunningReplica

from app.cluster.affinity import PrefixIndex, ranked
from app.cluster.http_call import HttpCall


class AffinityRouter(FIFOMixin, RequestRouter):
    def initialize_state(self, max_extra_load: int = 4, **_: object) -> None:
        self.max_extra_load = max_extra_load
        self.index = PrefixIndex()

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        key = _key(pending_request)
        loads = {rid: self.replica_queue_len_cache.get(r.replica_id) or 0 for rid, r in by_id.items()}
        ranks = ranked(list(by_id), loads, self.index.matches(key), self.max_extra_load)
        return [[by_id[rid] for rid in rank] for rank in ranks]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result: object) -> None:
        self.index.record(replica_id.unique_id, _key(pending_request))

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self.index.drop(replica_id.unique_id)

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        super().update_replicas(replicas)
        for gone in set(self.index.replicas()) - {r.replica_id.unique_id for r in replicas}:
            self.index.drop(gone)


def _key(pending_request: PendingRequest | None) -> str:
    if pending_request is None:
        return ""
    call = next((a for a in pending_request.args if isinstance(a, HttpCall)), None)
    return call.prompt_key if call else ""
