from sft_trainer.transfer.main import main

raise SystemExit(main())
