"""`python -m launcher` runs the same command as `tgi-launch`."""

from launcher.cli import main

if __name__ == "__main__":
    main(prog_name="tgi-launch")
