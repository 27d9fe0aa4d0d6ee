"""A worker for tests/test_sft_resume.py, run under torchrun: ``run_sft(MEMBER, SFTConfig(KEY=VALUE ...))``
(each VALUE read as JSON, else a string) in which rank 0 sends itself SIGTERM once it logs step STOP
(as Slurm signals a job before preempting it; 0: never), so every rank stops, checkpoints and exits 75.

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/sft_stop_worker.py MEMBER STOP KEY=VALUE ...
"""

import json
import os
import signal
import sys

from overtrain.finetune.instruct.sft import SFTConfig, run_sft


def value(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def main(argv: list[str]) -> None:
    member, stop = argv[0], int(argv[1])
    kw = {k: value(v) for k, v in (a.split("=", 1) for a in argv[2:])}

    def log(msg: str) -> None:  # rank 0's log (run_sft silences the others)
        print(msg, flush=True)
        if stop and msg.startswith(f"step {stop}/"):
            os.kill(os.getpid(), signal.SIGTERM)

    run_sft(member, SFTConfig(**kw), log=log)


if __name__ == "__main__":
    main(sys.argv[1:])
