"""Deploy targets: where a promoted adapter goes live (vLLM's LoRA API, Ollama, a pointer file).

Every target verifies an adapter directory (sha256 of every file, safetensors/json only) before it touches
anything; see ``base.DeployTarget``. ``canary`` decides which sessions see a candidate.
"""

from tools.serving.base import DeployTarget, verify_adapter_dir
from tools.serving.canary import next_share, pick_model
from tools.serving.ollama import OllamaTarget
from tools.serving.pointer import PointerFileTarget
from tools.serving.vllm import VllmTarget

__all__ = [
    "DeployTarget",
    "OllamaTarget",
    "PointerFileTarget",
    "VllmTarget",
    "next_share",
    "pick_model",
    "verify_adapter_dir",
]
