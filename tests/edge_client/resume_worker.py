"""Runs a certification against fresh fake services and SIGKILLs itself after KILL_AFTER journaled rows."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from edge_fakes import create_fake_server, linear_state, small_problem  # noqa: E402

from edge_client.certification import CertifyConfig, journal_header, run_certification  # noqa: E402
from edge_client.journal import Journal  # noqa: E402
from edge_client.sdk import ClientConfig  # noqa: E402
from edge_client.workflow import connect  # noqa: E402


def main(journal_path: str, config_json: str, kill_after: int) -> None:
    config = CertifyConfig(**json.loads(config_json))
    images, labels, model = small_problem()
    server, port = create_fake_server(linear_state())
    encoder, perturb = connect(ClientConfig(f"127.0.0.1:{port}"))
    indices = list(range(len(labels)))
    encoder.model_info()
    journal = Journal(journal_path, journal_header(config, encoder.pin.sha256, model, "fake"))
    written = []

    def on_row(row):
        written.append(row)
        if len(written) >= kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    run_certification(journal, indices, images, labels, model, encoder, perturb, config, on_row=on_row)
    server.stop(None)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
