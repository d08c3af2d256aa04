"""Falcon in vLLM: the MLP's width is hard-coded to 4 * hidden_size; config.ffn_hidden_size is
ignored.

transformers' `FalconMLP` (transformers/models/falcon/modeling_falcon.py) builds
`dense_h_to_4h` as hidden_size -> config.ffn_hidden_size and `dense_4h_to_h` back. vLLM's
`FalconMLP` (vllm/model_executor/models/falcon.py) builds both with `4 * hidden_size`, so a
checkpoint whose ffn_hidden_size is not 4 * hidden_size does not load (loud, not silent).

This builds both frameworks' MLP from one tiny config (hidden 128, ffn_hidden_size 256) and
loads the transformers MLP's weights into vLLM's the way vLLM's loader does.
Needs only torch, vLLM and transformers; a few seconds. Run: python reproduce.py
"""

from __future__ import annotations

import socket

import torch
from transformers import FalconConfig
from transformers.models.falcon.modeling_falcon import FalconMLP as ReferenceMLP
from vllm.config import VllmConfig, set_current_vllm_config
from vllm.distributed import init_distributed_environment, initialize_model_parallel
from vllm.model_executor.models.falcon import FalconMLP as TargetMLP


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    torch.manual_seed(0)
    config = FalconConfig(
        hidden_size=128, ffn_hidden_size=256, num_attention_heads=2, num_hidden_layers=2,
        vocab_size=512, new_decoder_architecture=False, multi_query=True,
    )  # fmt: skip
    reference = ReferenceMLP(config)
    with set_current_vllm_config(VllmConfig()):
        init_distributed_environment(
            world_size=1, rank=0, local_rank=0,
            distributed_init_method=f"tcp://127.0.0.1:{free_port()}", backend="gloo",
        )  # fmt: skip
        initialize_model_parallel(1, 1)
        target = TargetMLP(config)
    print(f"config: hidden_size {config.hidden_size}, ffn_hidden_size {config.ffn_hidden_size}")
    for name, p in reference.named_parameters():
        print(f"transformers {name}: {tuple(p.shape)}")
    for name, p in target.named_parameters():
        print(f"vLLM         {name}: {tuple(p.shape)}")
    try:
        for name, p in target.named_parameters():
            loader = getattr(p, "weight_loader", None)
            weight = dict(reference.named_parameters())[name].detach()
            if loader is None:
                p.data.copy_(weight)
            else:
                loader(p, weight)
    except Exception as exc:  # what vLLM's loader says of such a checkpoint
        print(f"DIFFERS: vLLM cannot load the checkpoint's MLP: {type(exc).__name__}: {exc}")
    else:
        print("agrees: vLLM's MLP loaded the checkpoint's weights")


if __name__ == "__main__":
    main()
