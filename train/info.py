"""``overtrain info MODEL_CONFIG``: parameter counts and training FLOPs per token."""

from __future__ import annotations

import json

from ..core.model import load_model_spec, model_info


def add_arguments(p):
    p.add_argument("model", help="model config: a name in configs/models/ (olmo-15m) or a YAML path")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. d_model=512")
    p.add_argument("--json", action="store_true", help="print JSON")


def run(args) -> int:
    info = model_info(load_model_spec(args.model, args.overrides))
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(
        f"{info['name']}: d_model={info['d_model']} n_layers={info['n_layers']} n_heads={info['n_heads']} "
        f"head_dim={info['head_dim']} context={info['context']} ({info['parametrization']}, width_mult={info['width_mult']:g})"
    )
    print(f"  total parameters          {info['total_params']:>14,}")
    print(f"  non-embedding parameters  {info['non_embedding_params']:>14,}")
    print(f"  training FLOPs per token  {info['flops_per_token']:>14,}  (6N + attention at context {info['context']})")
    return 0
