import gc

gc.disable()  # for the CLI's imports too; aigw.cli.main() says when it is turned back on

from aigw.cli import main  # noqa: E402 - after gc.disable(): that is the point

if __name__ == "__main__":
    main()
