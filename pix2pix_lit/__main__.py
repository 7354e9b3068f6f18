from pix2pix_lit.cli import main

main()
