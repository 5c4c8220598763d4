"""``python -m nima.evaluation.lm_eval_cli``: the harness's own ``lm_eval`` command, with ``--model nima``.

lm-eval (0.4.13) finds models only in its own registry: it reads no plugin entry points, so a plain
``lm_eval --model nima`` cannot see Nima's adapter. This module registers it (by importing
:mod:`nima.evaluation.harness`) and then hands the command line, unchanged, to lm-eval::

    python -m nima.evaluation.lm_eval_cli run --model nima --model_args checkpoint=CKPT \\
        --tasks hellaswag --limit 100

Every option of ``lm_eval`` works (``--include_path``, ``--num_fewshot``, ``--output_path``,
``--log_samples`` ...). In Python, ``import nima.evaluation.harness`` is all it takes for
``lm_eval.simple_evaluate(model="nima", model_args="checkpoint=CKPT", ...)``.
"""

from __future__ import annotations

import sys

from nima.errors import NimaError


def main() -> int:
    """Run lm-eval's command line (``sys.argv``) with the ``nima`` model registered."""
    try:
        _register()
        from lm_eval.__main__ import cli_evaluate

        cli_evaluate()
    except NimaError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def _register() -> None:
    """Import the adapter, whose ``@register_model("nima")`` adds it to lm-eval's registry (a
    ConfigError saying how to install lm-eval when it is missing)."""
    import nima.evaluation.harness  # noqa: F401


if __name__ == "__main__":
    sys.exit(main())
