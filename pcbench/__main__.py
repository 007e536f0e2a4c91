from pcbench.cli import app

app(prog_name="pcbench")
