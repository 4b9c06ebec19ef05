from splitdet.mobile_client.cli import main

raise SystemExit(main())
