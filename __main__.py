from overtrain.cli import main

raise SystemExit(main())
