# Two commands: `make demo` and `make test`. Both create .venv if it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint lock clean table5

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m permrl demo --out runs/demo

# Table 5 at CPU scale: 11 variants x 3 seeds on built-in data (README, Results); resumable.
TABLE5_VARIANTS := S,S+P,T,T+P,S&T,S+T,S+T+P,S+exp3,S+hardness,T+exp3,T+hardness,S+fixed,T+fixed
table5: $(STAMP)
	$(BIN)/python -m permrl ablate --config examples/table5.yaml --seeds 3 \
	  --variants '$(TABLE5_VARIANTS)' --out runs/table5
	$(BIN)/python -m permrl report runs/table5

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check permrl tests benchmarks examples

lock: $(STAMP)  # after upgrading and testing: pin what .venv holds now
	{ sed -n '1,3p' constraints.txt; $(BIN)/python -m pip freeze --exclude-editable \
	  | grep -iv '^permrl' | sed 's/^torch==\([0-9.]*\)+cpu$$/torch==\1/'; } > constraints.tmp
	mv constraints.tmp constraints.txt

clean:
	rm -rf $(VENV) runs
