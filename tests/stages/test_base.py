"""The base stage's output is the same bytes whatever environment `dvc repro` runs in.

transformers writes how a tokenizer was loaded (`local_files_only`) into the tokenizer_config.json
it saves; the base stage once left that to HF_HUB_OFFLINE, so a run with the variable set (as CI
sets it) wrote another base.lock.json than a run without, and every digest after it changed
with it. The stage now always loads locally; here a tiny base is built in two processes, one
with the variables set and one without (huggingface_hub reads them at import), and the locks
must be equal, file for file.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO, build_tiny_model_dir, tiny_params, uncapped_env

OFFLINE = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
BUILD = ("import json, sys; from pipeline.base import fetch_base; from pipeline.params import load_section; "
         "print(json.dumps(fetch_base(load_section('base', sys.argv[1]), sys.argv[2])))")


def test_the_base_is_the_same_bytes_online_or_offline(tmp_path):
    build_tiny_model_dir(tmp_path / "tiny_hf")
    params = tiny_params(tmp_path)
    locks = []
    for offline in (True, False):
        env = {k: v for k, v in uncapped_env().items() if k not in OFFLINE}
        env.update({k: "1" for k in OFFLINE} if offline else {})
        out = tmp_path / f"base_{offline}"
        proc = subprocess.run([sys.executable, "-c", BUILD, str(params), str(out)], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        locks.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        config = json.loads((out / "tokenizer_config.json").read_text())
        assert config.get("local_files_only") is True  # stated, whatever the environment said
    assert locks[0] == locks[1]
