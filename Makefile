# Two entry points (README): `make demo` and `make test`. Both set up their own virtualenv.
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?= $(if $(DPCDVAE_DATA),$(DPCDVAE_DATA),../shared/data)

.PHONY: venv test demo clean

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
	OMP_NUM_THREADS=2 $(VENV)/bin/dpcdvae demo --source $(DATA) --out demo_out

clean:
	rm -rf $(VENV) demo_out
