from mobile_client.cli import main

raise SystemExit(main())
