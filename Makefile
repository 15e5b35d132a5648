# Two entry points (README): `make demo` and `make test`. Both set up their own virtualenv.
# `make demo`: the pretrained Perov-5 model shipped in the package -> 256 crystals on the CPU, scored
# (demo_out/report.md); `make demo-train` trains a small model from scratch first.
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?= $(if $(DPCDVAE_DATA),$(DPCDVAE_DATA),../shared/data)

# the data folder is passed only where it exists (else the demo downloads the Perov-5 test CSV)
SOURCE := $(if $(wildcard $(DATA)/perov_5),--source $(DATA),)

.PHONY: venv test demo demo-train clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.13.0" || $(PY) -m pip install -q "torch>=2.4"
	$(PY) -m pip install -q -e ".[chem,test]"
	touch $@

venv: $(VENV)/.installed

test: $(VENV)/.installed
	OMP_NUM_THREADS=2 $(PY) -m pytest

demo: $(VENV)/.installed
	OMP_NUM_THREADS=2 $(VENV)/bin/dpcdvae demo $(SOURCE) --out demo_out

demo-train: $(VENV)/.installed
	OMP_NUM_THREADS=2 $(VENV)/bin/dpcdvae demo --train $(SOURCE) --out demo_out

clean:
	rm -rf $(VENV) demo_out
