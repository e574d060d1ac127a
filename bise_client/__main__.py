from bise_client.cli import main

raise SystemExit(main())
