from trainhub.cli import main

raise SystemExit(main())
