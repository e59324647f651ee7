"""Train an early-exit model: the entry point of `hf-earlyexit train` as a script, for `accelerate launch` and
`torchrun`. Everything lives in `hf_earlyexit.commands.train` (see its docstring for the options and launches):

    python examples/train.py --family bypass --exit_recipe joint --output_dir runs/joint
    accelerate launch --multi_gpu --num_processes 2 examples/train.py --use_cpu --family cascade --output_dir runs/c
"""

import sys

from hf_earlyexit.commands.train import (  # noqa: F401  (re-exported: tests and scripts import them from here)
    DataArguments,
    ModelArguments,
    check_launch,
    load_data,
    main,
    parse_args,
)


if __name__ == "__main__":
    main(sys.argv[1:])
