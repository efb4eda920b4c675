from softprompt.commands.cli import main

raise SystemExit(main())
