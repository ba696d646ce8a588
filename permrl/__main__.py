from permrl.cli import main

raise SystemExit(main())
