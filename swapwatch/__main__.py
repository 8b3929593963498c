from swapwatch.stream.cli import main

raise SystemExit(main())
