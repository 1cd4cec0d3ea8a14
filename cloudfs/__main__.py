from cloudfs.cli import main

raise SystemExit(main())
