"""The secure-aggregation federation in one process: biomx's ServerApp (DefaultWorkflow with
SecAgg+) and one ClientApp per site (`secaggplus_mod` in front of the site's `SiteClient`), joined
by a Grid that hands each message to its site's ClientApp directly and returns the reply.

Flower's own in-process engine (`flwr.simulation.run_simulation`) needs Ray, which biomx does
not install; this Grid is the few lines of it biomx needs. Every message is answered before the
next is sent, so a run is deterministic up to SecAgg+'s random masks and stochastic rounding.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from pathlib import Path
from uuid import uuid4

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.server import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from biomx.engine.logging import console
from biomx.experiment import Prepared
from biomx.federated.app import run_server, site_app
from biomx.federated.client import SiteClient
from biomx.federated.config import FederatedConfig

RUN_ID = 1
FIRST_NODE = 100  # site k is node 100 + k (node ids only need to differ from the server's)


class LocalGrid(Grid):
    """Sites 1..N as nodes FIRST_NODE + k, each with its own Context (SecAgg+ keeps its keys in its
    state)."""

    def __init__(self, app: ClientApp, n_sites: int):
        # Flower stamps every message with the task this process runs (a SuperLink would set it).
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = RUN_ID, SUPERLINK_NODE_ID, 1
        self.app = app
        self.contexts = {FIRST_NODE + k: Context(run_id=RUN_ID, node_id=FIRST_NODE + k, node_config={"site": k},
                                                 state=RecordDict(), run_config={}) for k in range(1, n_sites + 1)}  # fmt: skip
        self.replies: dict[str, Message] = {}
        self._run = Run.create_empty(RUN_ID)

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:  # fmt: skip
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Each message answered at once by its site's ClientApp; the reply waits to be pulled."""
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid4())
            msg.metadata.__dict__["_run_id"] = RUN_ID
            # A copy, as a transport delivers it: the workflow shares one record among its messages,
            # and the SecAgg+ mod edits what it receives.
            reply = self.app(copy.deepcopy(msg), self.contexts[msg.metadata.dst_node_id])
            self.replies[msg.metadata.message_id] = copy.deepcopy(reply)
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self.replies.pop(i) for i in message_ids if i in self.replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))


def simulate_secure(fed: FederatedConfig, p: Prepared, resume: str | Path | None, clients: list[SiteClient]) -> Path:
    """`fed.rounds` rounds with SecAgg+ in this process; returns the run folder."""
    grid = LocalGrid(site_app(lambda site: clients[site - 1].to_client()), len(clients))
    context = Context(run_id=RUN_ID, node_id=SUPERLINK_NODE_ID, node_config={}, state=RecordDict(), run_config={})
    run_dir = run_server(fed, p, resume, grid, context)
    console.print(f"simulated {fed.rounds} rounds of {len(clients)} site(s) with secure aggregation")
    return run_dir
