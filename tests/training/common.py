"""A tiny digits training set-up shared by the training tests (a few seconds on 2 CPU cores)."""

from __future__ import annotations

#: 8 px digits in 4x4 patches (a 2x2 grid: learns in seconds), 2 blocks of 32 dims.
TINY_MODEL = dict(img_size=8, patch_size=4, in_chans=1, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0)

#: Options of pe_probe.train for a run of a few seconds.
TINY_RUN = dict(
    recipe="digits", model_kwargs=TINY_MODEL, epochs=2, batch_size=16, lr=5e-3, warmup_epochs=0.5,
    progress=False, verbose=False, num_threads=1,
)


def cli_args(**overrides) -> list[str]:
    """``pe-probe train`` flags for the tiny run."""
    opts = {"--recipe": "digits", "--epochs": "2", "--batch-size": "16", "--lr": "5e-3", "--warmup-epochs": "0.5",
            "--num-threads": "1", **overrides}
    kv = [f"{k}={v}" for k, v in TINY_MODEL.items()]
    args = [a for k, v in opts.items() for a in ((k,) if v is True else (k, str(v)))]
    return args + ["--model-kwargs", *kv, "--no-progress", "--quiet"]
