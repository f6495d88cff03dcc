"""Training across machines, on loopback: two torchrun "nodes" (c10d rendezvous on 127.0.0.1, gloo, one
process each) follow the same loss trajectory as one process with the same global batch."""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from codonlm.cli import main
from codonlm.config import parse_config
from codonlm.data.prepare import prepare


def _curves(cfg, run_id: str) -> list[dict]:
    with open(Path(cfg.outputs.scores_dir) / run_id / "curves.csv") as fh:
        return list(csv.DictReader(fh))


def _free_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


@pytest.mark.slow
def test_two_nodes_on_loopback_match_one_process(tmp_path, make_corpus, tiny_config):
    files, _ = make_corpus(tmp_path, n_genes=8)  # 18 training windows: 5 steps an epoch
    raw = tiny_config(tmp_path, files, epochs=2, batch_size=2, checkpoint_every=0)
    raw["model"].update(n_layer=1, dropout=0.0)
    prepare(parse_config(raw), show_progress=False)
    per_node = tmp_path / "nodes.yaml"
    per_node.write_text(yaml.safe_dump(raw))
    raw["train"]["batch_size"] = 4  # one process, the same global batch
    single = tmp_path / "single.yaml"
    single.write_text(yaml.safe_dump(raw))

    endpoint = f"127.0.0.1:{_free_port()}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CODONLM_QUIET": "1"}
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
         "--node-rank", str(rank), "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint,
         "--rdzv-id", "codonlm-loopback", "--rdzv-conf", f"is_host={int(rank == 0)}", "--local-addr", "127.0.0.1",
         "--max-restarts", "0", "-m", "codonlm.train_codon_lm", "-c", str(per_node), "--run-id", "nodes"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    logs = []
    for node in nodes:
        try:
            logs.append(node.communicate(timeout=300)[0])
        except subprocess.TimeoutExpired:
            for n in nodes:
                n.kill()
            raise
    assert [n.returncode for n in nodes] == [0, 0], "\n".join(log[-3000:] for log in logs)

    assert main(["train", "-c", str(single), "--run-id", "single"]) == 0
    cfg = parse_config(raw)
    two, one = _curves(cfg, "nodes"), _curves(cfg, "single")
    assert [r["step"] for r in two] == [r["step"] for r in one] and len(one) == 2  # one row per epoch
    for a, b in zip(two, one, strict=True):
        for key in ("train_loss", "val_loss"):
            assert float(a[key]) == pytest.approx(float(b[key]), abs=1e-4), (key, a, b)
