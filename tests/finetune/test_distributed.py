"""Data-parallel LoRA SFT with accelerate: two gloo processes, each on half of the global batch, reach the same
losses and adapter weights as one process on the whole batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mlcore.finetune.distributed import RESULT_FILE, run_lora_sft

SETTINGS = dict(model="small", n_records=24, steps=3, batch_size=8, lr=5e-3, max_length=192, seed=1)


def _compare(ddp_dir: Path, one: dict, one_dir: Path) -> None:
    ddp = json.loads((ddp_dir / RESULT_FILE).read_text())
    assert ddp["world_size"] == 2 and "gloo" in ddp["backend"] and one["world_size"] == 1
    losses_ddp = [h["loss"] for h in ddp["history"]]
    losses_one = [h["loss"] for h in one["history"]]
    assert losses_one[-1] < losses_one[0]  # it trained
    torch.testing.assert_close(torch.tensor(losses_ddp), torch.tensor(losses_one), rtol=1e-5, atol=1e-6)
    assert [h["tokens"] for h in ddp["history"]] == [h["tokens"] for h in one["history"]]  # same global batch
    a = load_file(str(ddp_dir / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(one_dir / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and any("lora_B" in k for k in a)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6, msg=key)
    assert max(float(v.abs().max()) for k, v in a.items() if "lora_B" in k) > 1e-3  # B moved off zero


@pytest.mark.slow
def test_accelerate_launch_two_processes_match_one(tmp_path):
    """The command a user runs: ``accelerate launch --multi_gpu --num_processes 2 -m mlcore.finetune.distributed
    --cpu`` (torchrun under the hood; gloo on CPU)."""
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517",
           "-m", "mlcore.finetune.distributed", "--cpu", "--model", "small", "--out", str(tmp_path / "ddp"),
           "--records", str(SETTINGS["n_records"]), "--steps", str(SETTINGS["steps"]),
           "--batch-size", str(SETTINGS["batch_size"]), "--lr", str(SETTINGS["lr"]), "--seed", str(SETTINGS["seed"]),
           "--max-length", str(SETTINGS["max_length"])]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = run_lora_sft(tmp_path / "one", **SETTINGS)
    _compare(tmp_path / "ddp", one, tmp_path / "one")
