"""``overtrain info MODEL [key=value ...]``: parameter counts and training FLOPs per token.

overtrain info olmo-30m d_model=512 json=true
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..core.model_spec import ModelSpec, model_info


@dataclass
class InfoOptions:
    json: bool = False  # print JSON


def run(config: ModelSpec, as_json: bool = False) -> int:
    info = model_info(config)
    if as_json:
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
