"""What every notebook builder here shares: collect markdown and code cells, then write the notebook with stable
cell ids and cleared outputs (so a rebuilt notebook diffs only where its text changed)."""

from pathlib import Path

import nbformat

NOTEBOOKS = Path(__file__).resolve().parents[1]


class NotebookBuilder:
    """``nb = NotebookBuilder("07_lora_qlora")``; ``nb.md(text)``, ``nb.code(text)``; ``nb.write()``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.cells: list = []

    def md(self, text: str) -> None:
        self.cells.append(nbformat.v4.new_markdown_cell(text.strip("\n")))

    def code(self, text: str) -> None:
        self.cells.append(nbformat.v4.new_code_cell(text.strip("\n")))

    def write(self) -> Path:
        nb = nbformat.v4.new_notebook(cells=self.cells,
                                      metadata={"kernelspec": {"display_name": "Python 3", "name": "python3"}})
        prefix = self.name[:2]
        for i, cell in enumerate(nb.cells):
            cell["id"] = f"{prefix}{i:06x}"
        out = NOTEBOOKS / f"{self.name}.ipynb"
        nbformat.write(nb, out)
        print("wrote", out)
        return out
