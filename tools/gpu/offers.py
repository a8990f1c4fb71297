"""Offer requirements from a job's shape, and offer ranking by the job's EXPECTED TOTAL COST, not by $/h.

The model (every constant is here, named, and used nowhere else):

VRAM (``estimate_vram_gb``, GiB, per GPU; each GPU holds the whole model, data-parallel):
    weights      params x 2 bytes (bf16, LoRA) or x 0.55 bytes (NF4 4-bit + quantisation constants, QLoRA)
    adapter      trainable params (2 x rank x hidden x 7 projections x layers) x 16 bytes (fp32 weight, grad, Adam m, v)
    activations  gradient checkpointing: one hidden state per layer (seq x batch x hidden x 2 bytes x layers)
                 + one layer recomputed at a time (seq x batch x hidden x 34 bytes, flash attention: no seq^2 term)
                 + fp32 logits and their gradient (seq x batch x vocab x 8 bytes)
    overhead     1.5 GiB CUDA context + allocator slack, then x 1.10 fragmentation
    The shape comes from the parameter count: params ~= 12 x layers x hidden^2 with layers ~= hidden / 128
    (Llama-7B: hidden 4096, 32 layers), so hidden = (params x 128 / 12)^(1/3).

Throughput (``tokens_per_second``):
    FLOPs per trained token = 6 x params for LoRA (forward 2P, input gradients 2P, checkpoint recompute 2P; no weight
    gradients for the frozen base), x 1.35 for QLoRA (dequantising NF4 on every matmul).
    Achieved FLOP/s = dense bf16 tensor TFLOPS of the GPU model (spec sheet, ``GPU_BF16_TFLOPS``) x MFU 0.35
    x host factor x multi-GPU efficiency. The host factor is the offer's ``dlperf`` over the typical ``dlperf`` of
    that GPU model (``GPU_REF_DLPERF``), clamped to [0.5, 1.2]: it captures slow PCIe, CPU or thermals on one host.
    Unknown GPU models fall back to ``dlperf x 3`` TFLOPS (the ratio on the known ones), else ``tflops x 2``.
    n GPUs give n x 0.9 (gradient all-reduce over PCIe/NVLink).

Cost of one attempt (the Vast billing rules, see vast-api.md section 6):
    boot (image pull, ``BOOT_HOURS``) bills storage only; download of the base model (``download_gb`` at the offer's
    ``inet_down``), training, and upload bill GPU (``dph_base``, or the bid) and storage
    (``storage_cost`` x disk / 720 per hour); bandwidth bills ``inet_down_cost`` / ``inet_up_cost`` per GB.
Expected retries: the chance an attempt dies is p = 1 - reliability^(1 + hours/24) (one chance at boot, plus a
    per-day hazard), plus 10%/h for interruptible (outbid) instances. Failures are geometric, each wastes on average
    half an attempt: retry cost = p / (1 - p) x 0.5 x attempt cost.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable
from dataclasses import dataclass

from tools.gpu.base import Offer, OfferRequirements

BYTES_PER_GIB = 1024**3
MFU = 0.35
QLORA_SLOWDOWN = 1.35
MULTI_GPU_EFFICIENCY = 0.9
BOOT_HOURS = 0.1
EVAL_OVERHEAD_HOURS = 0.05
INTERRUPTIBLE_HAZARD_PER_HOUR = 0.10
CUDA_OVERHEAD_GIB = 1.5
FRAGMENTATION = 1.10
DEFAULT_VOCAB = 32_000

# Dense bf16 tensor TFLOPS with fp32 accumulate (vendor spec sheets; GeForce cards run at half rate).
GPU_BF16_TFLOPS: dict[str, float] = {
    "RTX 3060": 25.6,
    "RTX 3080": 59.5,
    "RTX 3090": 71.0,
    "RTX 3090 Ti": 80.0,
    "RTX 4070 Ti": 80.2,
    "RTX 4080": 97.5,
    "RTX 4090": 165.2,
    "RTX 5090": 209.5,
    "RTX A4000": 76.7,
    "RTX A5000": 111.1,
    "RTX A6000": 154.8,
    "RTX 6000Ada": 364.2,
    "A10": 125.0,
    "A40": 149.7,
    "L4": 121.0,
    "L40": 181.0,
    "L40S": 362.1,
    "Tesla T4": 65.0,
    "Tesla V100": 125.0,  # fp16 (no bf16 on Volta); AMP fp16 is what runs there
    "A100 PCIE": 312.0,
    "A100 SXM4": 312.0,
    "A100X": 312.0,
    "H100 PCIE": 756.0,
    "H100 NVL": 835.0,
    "H100 SXM": 989.0,
    "H200": 989.0,
    "H200 NVL": 835.0,
}

# Typical Vast DLPerf score of a healthy single-GPU host of each model (per GPU).
GPU_REF_DLPERF: dict[str, float] = {
    "RTX 3060": 9.0,
    "RTX 3080": 20.0,
    "RTX 3090": 24.0,
    "RTX 3090 Ti": 27.0,
    "RTX 4070 Ti": 28.0,
    "RTX 4080": 38.0,
    "RTX 4090": 60.0,
    "RTX 5090": 85.0,
    "RTX A4000": 18.0,
    "RTX A5000": 25.0,
    "RTX A6000": 30.0,
    "RTX 6000Ada": 70.0,
    "A10": 26.0,
    "A40": 29.0,
    "L4": 22.0,
    "L40": 45.0,
    "L40S": 72.0,
    "Tesla T4": 10.0,
    "Tesla V100": 30.0,
    "A100 PCIE": 90.0,
    "A100 SXM4": 100.0,
    "A100X": 90.0,
    "H100 PCIE": 150.0,
    "H100 NVL": 170.0,
    "H100 SXM": 200.0,
    "H200": 210.0,
    "H200 NVL": 180.0,
}


class TuneMethod(enum.StrEnum):
    LORA = "lora"
    QLORA = "qlora"


@dataclass(frozen=True)
class JobShape:
    """What a fine-tuning job needs; everything the ranking knows about the job."""

    params_b: float  # base model parameters, billions
    method: TuneMethod = TuneMethod.LORA
    seq_len: int = 2048
    batch_size: int = 4
    dataset_tokens: int = 10_000_000  # tokens per epoch
    epochs: float = 1.0
    lora_rank: int = 16
    min_cuda: float = 12.1
    disk_gb: float | None = None  # default: image + base weights + checkpoints (see ``job_disk_gb``)
    download_gb: float | None = None  # default: the bf16 base weights (params x 2 GB)
    upload_gb: float = 0.5  # adapter, metrics, logs
    max_dph: float | None = None
    min_reliability: float = 0.9
    min_inet_down_mbps: float = 100.0
    verified: bool = True
    interruptible: bool = False


@dataclass(frozen=True)
class CostEstimate:
    hours: float  # expected wall-clock hours the instance exists, retries included
    compute_usd: float
    storage_usd: float
    bandwidth_usd: float
    retry_usd: float
    total_usd: float
    tokens_per_s: float
    p_fail: float


def _hidden_size(params_b: float) -> float:
    return (params_b * 1e9 * 128 / 12) ** (1 / 3)


def estimate_vram_gb(
    params_b: float,
    method: TuneMethod | str,
    seq_len: int,
    batch: int,
    *,
    lora_rank: int = 16,
    vocab: int = DEFAULT_VOCAB,
) -> float:
    """GiB of GPU memory one GPU needs to fine-tune the model (see the module docstring for the model)."""
    if params_b <= 0 or seq_len <= 0 or batch <= 0:
        raise ValueError("params_b, seq_len and batch must be positive")
    method = TuneMethod(method)
    params = params_b * 1e9
    hidden = _hidden_size(params_b)
    layers = max(1.0, hidden / 128)
    weight_bytes = params * (2.0 if method is TuneMethod.LORA else 0.55)
    adapter_bytes = 2 * lora_rank * hidden * 7 * layers * 16
    tokens = seq_len * batch
    activation_bytes = tokens * hidden * 2 * layers + tokens * hidden * 34 + tokens * vocab * 8
    total = (weight_bytes + adapter_bytes + activation_bytes) / BYTES_PER_GIB + CUDA_OVERHEAD_GIB
    return total * FRAGMENTATION


def job_disk_gb(job: JobShape) -> float:
    """Container disk: 20 GB image and workspace + base weights + two checkpoints of headroom."""
    if job.disk_gb is not None:
        return job.disk_gb
    return math.ceil(20 + job.params_b * 2 * 1.5)


def job_download_gb(job: JobShape) -> float:
    return job.download_gb if job.download_gb is not None else job.params_b * 2


def requirements_for(job: JobShape) -> OfferRequirements:
    """Hard requirements for the provider's search (per-GPU VRAM, CUDA, disk, trust, bandwidth, $/h cap)."""
    return OfferRequirements(
        min_gpu_ram_gb=round(
            estimate_vram_gb(job.params_b, job.method, job.seq_len, job.batch_size, lora_rank=job.lora_rank), 1
        ),
        num_gpus=1,
        min_cuda=job.min_cuda,
        min_disk_gb=job_disk_gb(job),
        min_reliability=job.min_reliability,
        min_inet_down_mbps=job.min_inet_down_mbps,
        max_dph=job.max_dph,
        verified=job.verified,
        interruptible=job.interruptible,
    )


def eligible(offer: Offer, requirements: OfferRequirements) -> bool:
    """Whether an offer meets hard requirements (per-GPU VRAM; any GPU count, the job runs data-parallel)."""
    return (
        offer.gpu_ram_gb >= requirements.min_gpu_ram_gb
        and offer.num_gpus >= requirements.num_gpus
        and offer.cuda_max_good >= requirements.min_cuda
        and (offer.disk_gb == 0 or offer.disk_gb >= requirements.min_disk_gb)
        and offer.reliability >= requirements.min_reliability
        and (offer.inet_down_mbps == 0 or offer.inet_down_mbps >= requirements.min_inet_down_mbps)
        and (requirements.max_dph is None or offer.dph_total <= requirements.max_dph)
        and (offer.verified or not requirements.verified)
    )


def effective_tflops(offer: Offer) -> float:
    """Achieved training TFLOPS of the whole offer (see the module docstring)."""
    peak = GPU_BF16_TFLOPS.get(offer.gpu_name)
    ref = GPU_REF_DLPERF.get(offer.gpu_name)
    per_gpu_dlperf = offer.dlperf / max(offer.num_gpus, 1)
    if peak is None:
        peak = per_gpu_dlperf * 3.0 if per_gpu_dlperf > 0 else offer.tflops / max(offer.num_gpus, 1) * 2.0
        host = 1.0
    else:
        host = min(1.2, max(0.5, per_gpu_dlperf / ref)) if ref and per_gpu_dlperf > 0 else 1.0
    n = max(offer.num_gpus, 1)
    scale = 1.0 if n == 1 else n * MULTI_GPU_EFFICIENCY
    return peak * MFU * host * scale


def tokens_per_second(offer: Offer, job: JobShape) -> float:
    flops_per_token = 6 * job.params_b * 1e9
    if TuneMethod(job.method) is TuneMethod.QLORA:
        flops_per_token *= QLORA_SLOWDOWN
    return effective_tflops(offer) * 1e12 / flops_per_token


def expected_cost(offer: Offer, job: JobShape) -> CostEstimate:
    """Expected total cost of running ``job`` on ``offer``, retries included (model in the module docstring)."""
    tps = tokens_per_second(offer, job)
    if tps <= 0:
        return CostEstimate(math.inf, math.inf, math.inf, math.inf, math.inf, math.inf, 0.0, 1.0)
    disk = job_disk_gb(job)
    download_gb = job_download_gb(job)
    down_mbps = offer.inet_down_mbps or 100.0
    up_mbps = float(str(offer.raw.get("inet_up") or down_mbps))
    train_h = job.dataset_tokens * job.epochs / tps / 3600
    transfer_h = download_gb * 8000 / down_mbps / 3600 + job.upload_gb * 8000 / max(up_mbps, 1.0) / 3600
    running_h = train_h + transfer_h + EVAL_OVERHEAD_HOURS
    existing_h = BOOT_HOURS + running_h

    storage_rate = offer.storage_cost_per_gb_month * disk / 720
    raw_base = offer.raw.get("dph_base")
    if job.interruptible and offer.min_bid is not None:
        compute_rate = offer.min_bid
    elif raw_base is not None:
        compute_rate = float(str(raw_base))
    else:
        compute_rate = max(offer.dph_total - storage_rate, 0.0)
    compute = compute_rate * running_h
    storage = storage_rate * existing_h
    bandwidth = offer.inet_down_cost_per_gb * download_gb + offer.inet_up_cost_per_gb * job.upload_gb
    attempt = compute + storage + bandwidth

    reliability = min(max(offer.reliability, 0.0), 1.0)
    survive = reliability ** (1 + existing_h / 24)
    if job.interruptible:
        survive *= math.exp(-INTERRUPTIBLE_HAZARD_PER_HOUR * existing_h)
    p_fail = min(1.0 - survive, 0.95)  # capped so a near-zero reliability ranks last instead of dividing by zero
    wasted_attempts = p_fail / (1 - p_fail) * 0.5
    retry = attempt * wasted_attempts
    return CostEstimate(
        hours=existing_h * (1 + wasted_attempts),
        compute_usd=compute,
        storage_usd=storage,
        bandwidth_usd=bandwidth,
        retry_usd=retry,
        total_usd=attempt + retry,
        tokens_per_s=tps,
        p_fail=p_fail,
    )


def rank_offers(offers: Iterable[Offer], job: JobShape) -> list[tuple[Offer, CostEstimate]]:
    """Eligible offers, cheapest expected total first (ties: lower $/h, then id, so the order is stable)."""
    requirements = requirements_for(job)
    scored = [(o, expected_cost(o, job)) for o in offers if eligible(o, requirements)]
    return sorted(scored, key=lambda pair: (pair[1].total_usd, pair[0].dph_total, pair[0].id))


def cheapest_per_hour(offers: Iterable[Offer], job: JobShape) -> Offer | None:
    """The naive choice (lowest $/h among eligible offers), kept as the benchmark's baseline."""
    requirements = requirements_for(job)
    candidates = [o for o in offers if eligible(o, requirements)]
    return min(candidates, key=lambda o: (o.dph_total, o.id)) if candidates else None
