"""Mixture-of-experts (issue 13): parameters total and active equal transformers' models, FLOPs
are 6 x the active matmul parameters plus attention, and the memory and time terms of expert
parallelism (ep > 1, dp > ep) equal hand-worked DeepSpeed-MoE arithmetic."""
import json
import math

import pytest

from planner.estimate.predict import estimate
from planner.model import activations as act
from planner.model.flops import attention_flops_per_token, forward_flops_per_token
from planner.model.shape import param_counts
from planner.network import collectives as coll
from planner.network.topology import group_link
from planner.plan.strategy import Plan
from planner.search.engine import search
from planner.search.rules import check
from planner.spec.loading import spec_from_dict
from planner.spec.units import GiB, Offload, Precision, Recompute, ZeroStage

MIXTRAL = {"architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "hidden_size": 4096,
           "intermediate_size": 14336, "num_attention_heads": 32, "num_hidden_layers": 32,
           "num_key_value_heads": 8, "vocab_size": 32000, "num_local_experts": 8,
           "num_experts_per_tok": 2, "router_aux_loss_coef": 0.02, "rope_theta": 1e6,
           "sliding_window": None, "max_position_embeddings": 32768, "hidden_act": "silu",
           "tie_word_embeddings": False, "output_router_logits": False}
QWEN_MOE = {"architectures": ["Qwen2MoeForCausalLM"], "model_type": "qwen2_moe",
            "hidden_size": 2048, "intermediate_size": 5632, "num_attention_heads": 16,
            "num_hidden_layers": 24, "num_key_value_heads": 16, "vocab_size": 151936,
            "num_experts": 60, "num_experts_per_tok": 4, "moe_intermediate_size": 1408,
            "shared_expert_intermediate_size": 5632, "decoder_sparse_step": 1,
            "norm_topk_prob": False, "use_sliding_window": False, "sliding_window": 32768,
            "max_window_layers": 21, "mlp_only_layers": [], "tie_word_embeddings": False}
QWEN_MIXED = {"architectures": ["Qwen2MoeForCausalLM"], "model_type": "qwen2_moe",
              "hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 4,
              "num_hidden_layers": 6, "num_key_value_heads": 2, "vocab_size": 1000,
              "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 64,
              "shared_expert_intermediate_size": 96, "decoder_sparse_step": 2,
              "mlp_only_layers": [3]}


def spec(tmp_path, config, nodes=8, **search):
    (tmp_path / "config.json").write_text(json.dumps(config))
    return spec_from_dict({"model": {"hf_config": str(tmp_path), "seq_len": 4096},
                           "cluster": {"gpu": "H100-SXM", "nodes": nodes},
                           "training": {"tokens": 1e12, "global_batch_sequences": 256},
                           "search": {"precision": "bf16", **search}})


@pytest.mark.parametrize("config, total, active", [
    (MIXTRAL, 46_702_792_704, 12_879_925_248),
    (QWEN_MOE, 14_315_784_192, 2_689_173_504),
    (QWEN_MIXED, None, None),
], ids=["mixtral-8x7b", "qwen1.5-moe-a2.7b", "qwen-mixed-layers"])
def test_total_and_active_parameters_equal_transformers(tmp_path, config, total, active):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    m = spec(tmp_path, config).model
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(
            transformers.AutoConfig.from_pretrained(tmp_path))
    numel = sum(p.numel() for p in model.parameters())
    # active: all but the (experts - top_k) unused experts of every MoE layer
    expert = sum(p.numel() for p in model.parameters()) - sum(
        p.numel() for n, p in model.named_parameters() if "experts" not in n or "shared" in n)
    unused = expert * (m.moe.experts - m.moe.top_k) // m.moe.experts
    counts = param_counts(m)
    assert counts.total == numel and counts.active == numel - unused
    if total is not None:
        assert (counts.total, counts.active) == (total, active)


def test_mixed_layers_follow_decoder_sparse_step_and_mlp_only_layers(tmp_path):
    m = spec(tmp_path, QWEN_MIXED).model
    assert [m.is_moe_layer(i) for i in range(6)] == [False, True, False, False, False, True]
    assert m.moe_layers == 2


def test_flops_are_six_times_the_active_matmul_parameters_plus_attention(tmp_path):
    """Forward per token = 2 x (active parameters less the embedding lookup and the norms) +
    the attention core: the router and the top_k experts count, the idle experts do not."""
    m = spec(tmp_path, MIXTRAL).model
    c = param_counts(m)
    norms = (2 * m.n_layers + 1) * m.d_model
    matmul = c.active - c.embedding - norms
    assert forward_flops_per_token(m) == 2 * matmul + m.n_layers * attention_flops_per_token(m)
    assert 3 * forward_flops_per_token(m) == pytest.approx(
        6 * 12_879_925_248 - 6 * (32000 * 4096 + 65 * 4096) + 3 * 32 * 4 * 4096 * 4096)


def plan_of(**kw):
    base = dict(dp=64, tp=1, pp=1, zero=ZeroStage.GRADIENTS, precision=Precision.BF16,
                micro_batch=1, grad_accum=4, recompute=Recompute.NONE, offload=Offload.NONE,
                ep=8)
    return Plan(**{**base, **kw})


def test_memory_terms_with_expert_parallelism(tmp_path):
    """dp 64, ep 8, ZeRO-2: every rank holds the dense parameters and 1/8 of the experts in bf16;
    the fp32 master and Adam states are 1/64 of all parameters (experts partitioned over their
    8-rank expert-data-parallel group: 1/8 of 1/8)."""
    s = spec(tmp_path, MIXTRAL)
    p = plan_of()
    e = estimate(s, p, with_time=False)
    total = 46_702_792_704
    experts = 32 * 8 * 3 * 4096 * 14336
    held = total - experts + experts // 8
    assert e.memory.parameters == 2 * held
    assert e.memory.master_weights == pytest.approx(4 * total / 64)
    assert e.memory.optimizer_states == pytest.approx(8 * total / 64)


def test_a_moe_blocks_saved_activations_by_hand(tmp_path):
    """One Mixtral block, bf16, micro-batch 1 of 4096 tokens, capacity factor 1: each expert gets
    C = ceil(2 x 4096 / 8) = 1024 slots, 8,192 in all."""
    s = spec(tmp_path, MIXTRAL)
    m, p = s.model, plan_of()
    d = act._dims(m, p)
    S, E, k, h, f, e = 4096, 8, 2, 4096, 14336, 2
    slots = E * math.ceil(k * S / E)
    assert act.expert_slots(m, S) == slots == 8192
    router = 4 * S * h + 3 * 4 * S * E + S * E + 12 * k * S + 8 * (slots + 1) + 4 * 4 * S
    by_hand = router - e * S * h + e * slots * h + 4 * e * slots * f + e * k * S * h
    assert act.moe_mlp_saved_bytes(m, d, p) == by_hand
    dense_part = act._block_saved_bytes(m, p, moe=False) - act.mlp_saved_bytes(m, d)
    assert act.block_saved_bytes(m, p) == dense_part + by_hand


def test_all_to_all_and_expert_gradient_traffic_by_hand(tmp_path):
    """ep 8 inside one DGX H100 node: 4 all-to-alls per MoE layer per micro-batch (dispatch and
    combine, forward and backward) of the [8 x 1024, 4096] bf16 slot tensor, each (ep-1)/ep of
    it over NVSwitch at 450 GB/s x 0.85 plus 7 hops of latency."""
    s = spec(tmp_path, MIXTRAL)
    p = plan_of()
    e = estimate(s, p)
    size = 2 * 8192 * 4096
    link = group_link(s.cluster, 8, 1)
    assert link.nodes == 1
    one = 7 / 8 * size / (link.bandwidth * 0.85) + 7 * link.latency
    assert coll.all_to_all(size, link, 0.85) == pytest.approx(one)
    assert e.time.step.ep_comm == pytest.approx(p.grad_accum * 32 * 4 * one)
    # ZeRO-2's gradients: the dense parameters reduce-scatter over the 64 dp ranks, each rank's
    # 1/8 of the experts over the 8 ranks 8 apart that hold the same experts (other nodes)
    from planner.backends.deepspeed.timing import _dp_traffic
    from planner.model.shape import stages_to_check
    stage = stages_to_check(s.model, 1, p.grad_accum)[0]
    experts = 32 * 8 * 3 * 4096 * 14336
    dense = _dp_traffic(s, p, stage, 46_702_792_704 - experts, 64, 1)
    local = _dp_traffic(s, p, stage, experts / 8, 8, 8)
    assert group_link(s.cluster, 8, 8).nodes == 8
    from planner.backends.deepspeed.timing import dp_traffic_seconds
    per_step, per_micro = dp_traffic_seconds(s, p, stage, ("tp", "dp", "pp"))
    assert per_micro == pytest.approx(dense[1] + local[1])


@pytest.mark.parametrize("change, rule", [
    (dict(tp=2, dp=32, ep=8), "MoE layout"),
    (dict(pp=2, dp=32, ep=8, zero=ZeroStage.OPTIMIZER), "MoE layout"),
    (dict(zero=ZeroStage.PARAMETERS), "MoE layout"),
    (dict(ep=3), "ep vs experts"),
    (dict(ep=16), "ep vs experts"),
])
def test_rules_refuse_what_deepspeed_moe_does_not_run(tmp_path, change, rule):
    s = spec(tmp_path, MIXTRAL)
    assert check(s, plan_of(**change)).rule == rule


def test_a_dense_model_keeps_ep_1_and_the_search_finds_expert_parallel_plans(tmp_path):
    dense = spec_from_dict({"model": "llama2-7b", "cluster": {"gpu": "H100", "nodes": 1},
                            "training": {"tokens": 1e10, "global_batch_sequences": 64}})
    assert check(dense, plan_of(dp=8, ep=2, micro_batch=1, grad_accum=8)).rule == "ep vs experts"
    result = search(spec(tmp_path, MIXTRAL))
    assert result.best is not None and result.best.plan.ep > 1
    assert all(e.plan.ep > 1 for e in result.feasible)  # 93 GB of bf16 weights need sharding
    assert result.best.not_executable == ""  # the executor runs DeepSpeed-MoE's layer


def test_top_1_routing_needs_min_capacity_tokens_per_micro_batch():
    """DeepSpeed's top-1 gate asserts a rank's micro-batch has at least min_capacity tokens
    (sharded_moe.py top1gating); top-2 and above have no such assert."""
    def moe_spec(top_k):
        return spec_from_dict({
            "model": {"preset": "tiny-moe", "moe": {"experts": 4, "top_k": top_k,
                                                    "min_capacity": 512}},
            "cluster": {"gpu": "H100", "nodes": 1},
            "training": {"tokens": 1e8, "global_batch_sequences": 64}})
    short = plan_of(dp=8, ep=4, micro_batch=2, grad_accum=4)  # 2 x 128 = 256 tokens
    rejected = check(moe_spec(1), short)
    assert rejected.rule == "MoE top-1 tokens"
    assert rejected.reason == ("model.moe.min_capacity: top-1 routing needs a micro-batch of at "
                               "least min_capacity (512) tokens, not 2 x 128")
    assert check(moe_spec(1), plan_of(dp=8, ep=4, micro_batch=4, grad_accum=2)) is None
    assert check(moe_spec(2), short) is None


def test_search_ep_takes_one_value_and_a_gate_needs_a_shared_expert():
    """search.ep reads like the other axes (one value, a list or auto), and a shared-expert
    gate without a shared expert is refused at its field."""
    base = {"model": "tiny-moe", "cluster": {"gpu": "H100", "nodes": 1},
            "training": {"tokens": 1e8, "global_batch_sequences": 64}}
    assert spec_from_dict({**base, "search": {"ep": 2}}).search.ep == (2,)
    with pytest.raises(Exception, match="model.moe.shared_expert_gate: the gate scales the "
                                        "shared expert, and there is none"):
        spec_from_dict({**base, "model": {"preset": "tiny-moe", "moe": {
            "experts": 4, "shared_expert_gate": True}}})


def test_the_report_shows_total_and_active_parameters(tmp_path):
    from click.testing import CliRunner

    from pretrain.cli import main
    (tmp_path / "config.json").write_text(json.dumps(MIXTRAL))
    path = tmp_path / "spec.yaml"
    path.write_text("model: {hf_config: config.json, seq_len: 4096}\ncluster: {gpu: H100-SXM, "
                    "nodes: 8}\ntraining: {tokens: 1e12, global_batch_sequences: 256}\n")
    out = CliRunner().invoke(main, [str(path)])
    assert "46.703 B parameters; 12.880 B active: 32 of 32 layers route to 2 of 8 experts" \
        in out.stdout
    assert "expert-parallel all-to-alls" in out.stdout
    report = json.loads(CliRunner().invoke(main, [str(path), "--json"]).stdout)
    assert report["model"]["params"] == 46_702_792_704
    assert report["model"]["active_params"] == 12_879_925_248
    assert report["best"]["strategy"]["ep"] > 1
    assert report["best"]["memory_gib"]["parameters"] < 46.7e9 * 2 / GiB


def test_random_moe_shapes_plan_or_refuse_cleanly():
    """120 random mixture-of-experts specs (experts, top_k, sparse layers, capacity, dropless,
    shared experts, ep pinned or auto; tiny vocabularies and sequences; GPUs and CPUs): each is a
    project error or a plan whose report and notes render, with no numpy warning on the way."""
    import random
    import warnings

    from planner.capacity.advice import plan_notes
    from planner.errors import PlannerError
    from planner.report import to_json, to_text
    rng = random.Random(13)
    planned = 0
    for _ in range(120):
        layers, experts = rng.choice([1, 2, 3, 4, 6]), rng.choice([1, 2, 3, 4, 8, 16])
        shared = rng.choice([0, 32])
        moe = {"experts": experts, "top_k": rng.randint(1, experts), "every": rng.choice([1, 2, 3]),
               "capacity_factor": rng.choice([0.01, 0.5, 1.0, 4.0]),
               "min_capacity": rng.choice([0, 4, 100]), "drop_tokens": rng.choice([True, False]),
               "load_imbalance": rng.choice([1.0, 3.0]), "shared_d_ff": shared,
               "shared_expert_gate": bool(shared) and rng.choice([True, False]),
               "dense_layers": rng.sample(range(layers), k=rng.randint(0, layers))}
        data = {"model": {"arch": rng.choice(["gpt2", "llama"]), "n_layers": layers, "d_model": 64,
                          "n_heads": 4, "d_ff": 128, "vocab_size": rng.choice([2, 100]),
                          "seq_len": rng.choice([1, 16, 128]), "moe": moe},
                "cluster": {"gpu": rng.choice(["H100", "A100", "cpu"]),
                            "nodes": rng.choice([1, 2]), "gpus_per_node": rng.choice([1, 2, 8])},
                "training": {"tokens": 1e9, "global_batch_sequences": rng.choice([1, 8, 64])},
                "search": {"ep": rng.choice(["auto", 1, 2, 3])}}
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            try:
                result = search(spec_from_dict(data))
            except PlannerError:
                continue
            to_text(result, [], "random", plan_notes(result))
            to_json(result, [], "random")
            planned += result.best is not None
    assert planned >= 20  # the draw does reach plans, not only refusals
