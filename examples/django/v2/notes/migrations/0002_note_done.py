from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("notes", "0001_initial")]  # noqa: RUF012 (Django convention)

    operations = [  # noqa: RUF012 (Django convention)
        migrations.AddField(
            model_name="note",
            name="done",
            field=models.BooleanField(db_default=False, default=False),
        ),
    ]
