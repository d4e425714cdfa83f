# One entry point for set-up, tests and the demo. Every target creates .venv if missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# CPU machines: the CPU build of torch. CUDA users: make TORCH_SPEC="torch==2.13.0" TORCH_INDEX=...
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
XFORMERS_SPEC ?= xformers==0.0.35
STAMP := $(VENV)/.installed

.PHONY: install test demo pretrain-demo lint clean

$(STAMP): setup.cfg pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
	# xformers pins its own torch: --no-deps keeps ours. Its kernels need CUDA; on CPU only
	# its mask classes are used (tests compare them with mmvit's dense mask).
	$(PIP) install -q --no-deps "$(XFORMERS_SPEC)"
	$(PIP) install -q -e ".[data,train,demo,test]" "$(TORCH_SPEC)"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

demo: $(STAMP)
	bash tools/demo.sh

# MAE pretraining of the demo data without labels, then probes with 10% of the labels (docs/pretraining.md).
pretrain-demo: $(STAMP)
	VENV=$(VENV) bash tools/pretrain_demo.sh

clean:
	rm -rf $(VENV) runs data
